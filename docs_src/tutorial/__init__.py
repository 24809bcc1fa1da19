"""The tutorial's one app, step by step: each module is the one before it plus one thing."""
