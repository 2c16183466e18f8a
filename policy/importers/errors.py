class ImportProblem(ValueError):
    """An import that cannot proceed. Names the file, the field and the reason, so a person can
    fix the input; raised before anything is stored (or after everything stored was removed)."""

    def __init__(self, file: str, field: str, reason: str) -> None:
        self.file = file
        self.field = field
        self.reason = reason
        super().__init__(f"{file}: {field}: {reason}")
