"""The model kit for your own data (`models build --data`): dataset folders, checks, teacher, student."""
