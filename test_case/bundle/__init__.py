"""The air-gapped bundle: everything the suite needs, made on a connected machine, installed offline.

Where things live:

===============  =====================================================================================
``manifest``     ``bundle.json`` and ``SHA256SUMS``: the typed record of a bundle, every file's sha256
``build``        ``make bundle``: wheels of the lock, tokenizers, C4 files, the container, the manifest
``install``      ``make install BUNDLE=DIR``: check every hash, then pip with no index, from the bundle
``cli``          ``python -m test_case.bundle build|verify|install|tokenizer``
===============  =====================================================================================

``manifest``, ``install`` and ``cli`` use the standard library only: they run on a machine where
nothing of the suite is installed yet (``make install`` calls them with a bare venv's Python).
"""
