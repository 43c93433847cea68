"""The quality canary: fixed questions over fixed histories, answered as the service answers.

Every ``--canary-interval`` seconds the service runs the evaluation harness's needle task —
seeded samples, a history made of the held-out texts shipped with the package, the service's
own base, focus bundle and session settings (a MegaContext session in memory, focused for the
question as an ask is) — and sets ``megacontext_canary_answer_nll`` to the mean NLL of the
expected answers. Nothing about it changes between runs but the models and the settings, so a
rise is quality drift (alert ``MegaContextQualityDrift``). It runs on the model lane, between
requests, and touches no tree.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from megacontext.errors import BudgetError
from megacontext.server.metrics import CANARY_FAILURES, CANARY_NLL, CANARY_SECONDS

log = logging.getLogger(__name__)

TASK, LENGTH, SAMPLES, SEED = "needle", 2048, 3, 0
FILLER_CHARACTERS = 400_000  # of the held-out texts: ample haystack for three 2k-token samples


class Canary:
    """Measures the canary with ``base``, ``bundle`` and session ``config``."""

    def __init__(self, base: Any, bundle: Any, config: Any):
        from megacontext.data import Filler, heldout_texts

        self.base, self.bundle, self.config = base, bundle, config
        text = "\n\n".join(heldout_texts())[:FILLER_CHARACTERS]
        special = tuple(t for t in (base.bos_token_id, base.eos_token_id) if t is not None)
        self.filler = Filler(np.asarray(base.encode(text, add_bos=False)), special)

    def measure(self) -> float:
        """Run the canary once; set and return its answer NLL (nats per answer token)."""
        from megacontext.eval.harness import run_task
        from megacontext.eval.memory import MegaContextMemory

        lensnet = self.bundle.get("lensnet") if "lensnet" in self.bundle.modules else None
        started = time.perf_counter()
        result = run_task(
            self.base,
            lambda: MegaContextMemory(self.base, self.bundle, lensnet, config=self.config),
            TASK,
            LENGTH,
            self.config.W_max,
            SAMPLES,
            self.filler,
            seed=SEED,
        )
        if result.answer_nll is None:  # every sample skipped: no room for the question
            raise BudgetError(
                f"the canary's question does not fit W_max={self.config.W_max}; raise --w-max"
            )
        CANARY_NLL.set(result.answer_nll)
        CANARY_SECONDS.set(time.perf_counter() - started)
        return result.answer_nll


def every(interval_s: float, run: Callable[[], object], stop: threading.Event) -> threading.Thread:
    """Call ``run`` now and then every ``interval_s`` seconds until ``stop`` is set; a run that
    fails is counted (``megacontext_canary_failures_total``) and logged, and the next one runs."""

    def loop() -> None:
        while not stop.is_set():
            try:
                run()
            except Exception:
                CANARY_FAILURES.inc()
                log.exception("the quality canary failed")
            stop.wait(interval_s)

    thread = threading.Thread(target=loop, daemon=True, name="canary")
    thread.start()
    return thread


__all__ = ["Canary", "every"]
