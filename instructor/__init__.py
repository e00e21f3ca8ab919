"""Instructor material: reference solutions to the course's exercises (not part of minilora)."""
