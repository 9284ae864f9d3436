"""Checkpoints: reading folders (ours and Hugging Face's) and converting other formats into ours."""
