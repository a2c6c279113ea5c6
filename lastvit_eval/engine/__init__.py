"""Batched inference: one forward pass that emits every tap the requested evaluators need."""
