"""Writing a benchmark's Markdown results table."""

from pathlib import Path


def write_results(lines: list[str], output: Path) -> None:
    """Write `lines` to `output` (creating its folder) and print them."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(lines))
    print("\n".join(lines))
