"""C4 to MDS preprocessing: tokenize, concatenate and write streaming shards."""
