"""One Llama-family model definition in plain PyTorch, its loaders, tokenizer and sampler."""
