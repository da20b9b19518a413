"""Turn what users bring (LLM answers, code, datasets) into runnable inputs."""
