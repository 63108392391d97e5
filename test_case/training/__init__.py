"""What a training job runs on each node: launch decisions, checkpoint repair, llm-foundry's entry point."""
