"""Stop generating a classification answer once it can no longer name a label.

Only an answer that names a label exactly (after ``normalize_answer``) counts as right, so once the text generated so
far cannot grow into any label, the rest of it cannot change the score. Prompted base models answer a
classification prompt in prose ("I'm sorry to hear that your card..."): without this they run to the token budget
(longest label + 4, 22 tokens on banking77) on every example, and a step of a batch of 16 costs about 0.9 s on one
CPU thread over a 540-token zero-shot prompt. With it a prose answer stops after a token or two. The stored
prediction is the text up to the stop (it already shows the answer was not a label); right answers and labels that
end in the end-of-turn token are unaffected.

Why the check drops the last character of the normalised text: normalisation is applied to a partial string, and the
partial string's last character may still change (an NFKC composition or a case-folding expansion with the next
token); every other character of a prefix is final.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eval.metrics import normalize_answer


def can_still_name_a_label(text: str, labels: Sequence[str]) -> bool:
    """True while ``text`` (an answer being generated) may still grow into one of ``labels``."""
    head = normalize_answer(text)[:-1]
    return any(label.startswith(head) for label in labels)


def outside_labels_stop(tokenizer: Any, labels: Sequence[str], prompt_length: int) -> Any:
    """A ``transformers.StoppingCriteria``: per row, True once its text after ``prompt_length`` cannot be a label."""
    import torch
    from transformers import StoppingCriteria

    known = sorted({normalize_answer(label) for label in labels})

    class OutsideLabelsStop(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            texts = tokenizer.batch_decode(input_ids[:, prompt_length:], skip_special_tokens=True)
            done = [not can_still_name_a_label(text, known) for text in texts]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return OutsideLabelsStop()
