"""Reading and writing quantized models."""
