"""Local servers speaking real wire protocols (Ollama, Gemini, OpenAI), for tests and benchmarks."""
