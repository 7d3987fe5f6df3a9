"""Latent-diffusion fine-tuning building blocks (finetune stage)."""
