"""Parameter-efficient adapters as modules: Convpass and RepAdapter (``modules``) and LoRA
through Hugging Face peft (``lora``)."""
