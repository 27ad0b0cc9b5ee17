"""The built-in arithmetic model kit (`models build` without `--data`): task, teacher, student, evaluation."""
