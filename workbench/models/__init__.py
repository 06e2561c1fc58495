"""Models: finding and loading one, the Policy (model + tokenizer + LoRA adapter), decoding with telemetry."""
