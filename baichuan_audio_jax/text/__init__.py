"""Text side shared by training data and inference: the text tokenizer and its special tokens."""
