"""GPT-SoVITS models, checkpoint readers and writers."""
