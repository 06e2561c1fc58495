"""The in-process engine: the Trainer, its update, its changes of course, evaluation."""
