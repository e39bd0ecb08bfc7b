"""The ``__main__`` guard: worker processes are spawned, and a spawned process imports the
main module again. A script that starts its job at module level, without
``if __name__ == "__main__":``, would start it again in every worker, and every partition
would fail with a BrokenProcessPool that says nothing of why. We look before spawning."""

from __future__ import annotations

import ast
import sys
import threading
from types import FrameType, ModuleType

from batchd.errors import UnguardedMainModule as UnguardedMainModule


def check_main_guard(step_name: str) -> None:
    """Raise :class:`UnguardedMainModule` if the main module is running its module-level
    code (in this thread or the main thread) at a line outside an
    ``if __name__ == "__main__":`` block."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or not isinstance(path, str):
        return  # an interactive session or ``python -c``: nothing is re-imported by path
    line = _module_level_line(main)
    if line is None:
        return
    try:
        with open(path, encoding="utf-8") as source:
            tree = ast.parse(source.read(), path)
    except (OSError, SyntaxError, UnicodeDecodeError):
        return
    if any(_guards(node, line) for node in tree.body):
        return
    raise UnguardedMainModule(
        f"step {step_name!r} runs its partitions on worker processes, which import {path} "
        f"again, and line {line} there starts the job at module level: every worker would "
        'start it again. Put the code that starts jobs under `if __name__ == "__main__":`'
    )


def _module_level_line(main: ModuleType) -> int | None:
    """The line the main module's top-level code is at, if it is running (it waits in a
    start() there, or in a wait() on the main thread while the job runs in a pool thread)."""
    frames: list[FrameType | None] = [sys._getframe()]
    main_thread = threading.main_thread().ident
    if main_thread is not None:
        frames.append(sys._current_frames().get(main_thread))
    for frame in frames:
        while frame is not None:
            if frame.f_globals is main.__dict__ and frame.f_code.co_name == "<module>":
                return frame.f_lineno
            frame = frame.f_back
    return None


def _guards(node: ast.stmt, line: int) -> bool:
    """Whether ``node`` is ``if __name__ == "__main__":`` and ``line`` is in its body."""
    if not isinstance(node, ast.If) or not node.body:
        return False
    test = node.test
    is_main_test = (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and len(test.comparators) == 1
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value == "__main__"
        and isinstance(test.ops[0], ast.Eq)
    )
    end = node.body[-1].end_lineno or node.body[-1].lineno
    return is_main_test and node.body[0].lineno <= line <= end
