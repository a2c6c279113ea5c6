"""End-to-end jobs: load model -> data -> one forward pass -> evaluators -> results."""
