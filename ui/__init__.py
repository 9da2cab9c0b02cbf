"""spanqa's Gradio chat UI (``spanqa serve``)."""
