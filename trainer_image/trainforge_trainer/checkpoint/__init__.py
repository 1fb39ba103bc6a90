"""Complete training state to storage and back: see manager.Checkpointer."""
