"""The progress bar every long loop uses (training, RL learners): tqdm on the main process only."""

from __future__ import annotations

from typing import Any

from tqdm import tqdm


def progress_bar(total: int, initial: int = 0, desc: str = "", enabled: bool = True) -> Any:
    """A tqdm bar that starts at ``initial`` (resumed runs) and redraws at most once a second."""
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True, mininterval=1.0)


def note(text: str) -> None:
    """Print a line without breaking an active bar."""
    tqdm.write(text)
