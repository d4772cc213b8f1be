"""Eq. 6 of MEM: HotFlip search for the per-sample text triggers."""

from __future__ import annotations

import torch

from ..losses import ContrastiveLoss, loss_with_text_replaced
from ..surrogate import Surrogate, frozen

_batch_loss = ContrastiveLoss(gather=False)


class HotFlip:
    r"""HotFlip trigger search (Ebrahimi et al. 2018) as MEM Eq. 6, error-minimising.

    For each trigger position j, the first-order loss change of putting token w there is
    (e_w - e_cur) . grad_{e_j} L; the K allowed tokens with the lowest value are candidates. Every
    candidate is then scored with a real forward pass of the text tower (image features are fixed
    and computed once per batch), and each sample keeps its best candidate only if it lowers the
    exact batch loss. If accepting all samples' choices together would raise the loss, only the
    single best change is kept, so the loss never goes up.

    Arguments:
        surrogate (Surrogate): frozen during the search.
        allowed (torch.BoolTensor): (V,) tokens a trigger may use (round-trip-safe words).
        candidates (int): K, candidates per position. Default: 16.

    Shape:
        - image_features: (B, D) unit-norm features of x + d, fixed.
        - input_ids, attention_mask: (B, L) with the trigger at columns ``slots`` (B, k) (an int k:
          columns 1..k, right after the start token, for every row).
        - output: the new input_ids (B, L).

    Examples::
        >>> search = HotFlip(surrogate, vocabulary.mask, candidates=16)
        >>> input_ids = search(image_features, input_ids, attention_mask, codec.slots(positions, batch))
    """

    def __init__(self, surrogate: Surrogate, allowed: torch.Tensor, candidates: int = 16):
        self.surrogate = surrogate
        self.allowed = allowed
        self.candidates = min(candidates, int(allowed.sum()))

    def _text_and_gradient(self, image_features, input_ids, attention_mask, logit_scale):
        """Text features (B, D) and d loss / d token-embedding output (B, L, E): one forward and backward."""
        captured = {}

        def hook(_module, _inputs, output):
            output = output.detach().requires_grad_(True)
            captured["embeddings"] = output
            return output

        handle = self.surrogate.token_embedding.register_forward_hook(hook)
        try:
            with torch.enable_grad():
                text = self.surrogate.text_features(input_ids, attention_mask)
                loss = _batch_loss(image_features, text, logit_scale)
                (gradient,) = torch.autograd.grad(loss, captured["embeddings"])
        finally:
            handle.remove()
        return text.detach(), loss.detach(), gradient

    @torch.no_grad()
    def __call__(
        self,
        image_features: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        trigger_length: int | torch.Tensor,
    ) -> torch.Tensor:
        batch = input_ids.shape[0]
        input_ids = input_ids.clone()
        index = torch.arange(batch, device=input_ids.device)
        slots = trigger_length
        if isinstance(slots, int):
            slots = torch.arange(1, 1 + slots, device=input_ids.device).expand(batch, -1)
        slots = slots.to(input_ids.device)
        with frozen(self.surrogate):
            logit_scale = self.surrogate.logit_scale()
            table = self.surrogate.token_embedding.weight  # (V, E)
            # the embedding table may be larger or smaller than the tokenizer's vocabulary
            allowed = torch.zeros(table.shape[0], dtype=torch.bool, device=table.device)
            size = min(len(self.allowed), table.shape[0])
            allowed[:size] = self.allowed[:size].to(table.device)
            for column in slots.T:  # (B,): this trigger token's column in every row
                current_text, batch_loss, gradient = self._text_and_gradient(
                    image_features, input_ids, attention_mask, logit_scale
                )
                gradient = gradient[index, column]
                first_order = gradient.float() @ table.float().T  # (B, V); e_cur . g is constant per row
                first_order[:, ~allowed] = float("inf")
                first_order[index, input_ids[index, column]] = float("inf")  # the current token is scored apart
                candidates = first_order.topk(self.candidates, dim=1, largest=False).indices  # (B, K)

                trial = input_ids.unsqueeze(1).repeat(1, self.candidates, 1)  # (B, K, L)
                trial[index.unsqueeze(1), torch.arange(self.candidates, device=trial.device), column.unsqueeze(1)] = (
                    candidates
                )
                trial_mask = attention_mask.unsqueeze(1).expand_as(trial)
                trial_text = self.surrogate.many_text_features(trial.flatten(0, 1), trial_mask.flatten(0, 1))
                trial_text = trial_text.view(batch, self.candidates, -1)

                trial_loss = loss_with_text_replaced(image_features, current_text, trial_text, logit_scale)  # (B, K)
                # the current loss through the same formula, so the comparison is like for like
                current_loss = loss_with_text_replaced(
                    image_features, current_text, current_text[:, None], logit_scale
                )[:, 0]
                best_loss, best = trial_loss.min(dim=1)
                improves = best_loss < current_loss
                if not improves.any():
                    continue
                chosen_text = torch.where(improves[:, None], trial_text[index, best], current_text)
                joint_loss = _batch_loss(image_features, chosen_text, logit_scale)
                if joint_loss > batch_loss:  # interactions between samples: keep the single best change
                    single = best_loss.argmin()
                    improves = torch.zeros_like(improves)
                    improves[single] = True
                new_tokens = candidates[index, best]
                input_ids[index, column] = torch.where(improves, new_tokens, input_ids[index, column])
        return input_ids
