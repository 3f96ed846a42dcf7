"""What a training checkpoint holds (jobs.harness.trained_state): the state that learns, without the frozen
pretrained parameters a model is built with, and loading it back into a model built as for training."""

import pytest
import torch

from jobs import harness


class Captioner(torch.nn.Module):
    """A frozen 'pretrained' embedding tied to the output head, a layer that learns, and a buffer."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(0)  # the packaged weights: the same in every build
        self.embed = torch.nn.Embedding(50, 8).requires_grad_(False)
        torch.manual_seed(seed)  # the layer that learns: another start in every build
        self.block = torch.nn.Linear(8, 8)
        self.head = torch.nn.Linear(8, 50, bias=False)
        self.head.weight = self.embed.weight  # tied, as an LM head to its token embeddings
        self.register_buffer("steps", torch.zeros(()))


def test_a_checkpoint_holds_what_learns_and_loads_into_a_model_built_as_for_training():
    trained = Captioner(seed=1)
    with torch.no_grad():
        trained.block.weight.add_(1.0)
        trained.steps.fill_(7)
    state = harness.trained_state(trained)
    assert sorted(state) == ["block.bias", "block.weight", "steps"]  # neither name of the frozen tied weight

    fresh = Captioner(seed=2)
    assert not torch.equal(fresh.block.weight, trained.block.weight)
    harness.load_trained_state(fresh, state)
    assert torch.equal(fresh.block.weight, trained.block.weight) and fresh.steps.item() == 7
    assert torch.equal(fresh.embed.weight, trained.embed.weight) and fresh.head.weight is fresh.embed.weight

    # a checkpoint written before frozen parameters were left out loads the same
    harness.load_trained_state(Captioner(seed=3), trained.state_dict())


@pytest.mark.parametrize("change, named", [("drop", "block.bias"), ("add", "extra.weight")])
def test_a_checkpoint_that_does_not_fit_is_an_error_naming_the_entry(change, named):
    state = harness.trained_state(Captioner(seed=1))
    if change == "drop":
        del state["block.bias"]
    else:
        state["extra.weight"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match=named):
        harness.load_trained_state(Captioner(seed=2), state)
