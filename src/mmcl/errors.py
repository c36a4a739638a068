"""The one exception type users see: every bad input ends in an MmclError naming what is wrong."""


class MmclError(Exception):
    """A clear, user-facing error (bad file, record, config key or name)."""


class DataError(MmclError):
    """Problems found in data files; `problems` lists each one with file and record index."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        shown = "\n".join(f"  - {p}" for p in problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"{len(problems)} data problem(s):\n{shown}{more}")
