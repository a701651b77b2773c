"""Image encoders of the vision-language models: each maps a batch of pixel tensors to patch features."""
