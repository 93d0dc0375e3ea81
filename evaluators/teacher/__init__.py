"""evaluators.teacher.prepare."""
