"""What a person gives: the option table, its validation (pydantic, in a process of
its own for the engine), problems as data."""
