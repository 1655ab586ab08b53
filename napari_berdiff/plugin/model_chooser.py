"""The widget's model chooser: the bundled model for the modality of the layers (BraTS or OCT)
unless the user picks a checkpoint file. A missing bundled model or a file that is not a model is
a clear message under the chooser (the widget then keeps Run disabled)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .inputs import (BUNDLED_CHANNELS, BUNDLED_CHOICES, FILE_CHOICE, image_layers, is_output,
                     modality_of, model_source, multichannel_layers)

__all__ = ["ModelChange", "ModelChooser"]


@dataclass
class ModelChange:
    """What a change of the model chooser means for the widget."""

    switched: bool  # another model than before: a run in flight belongs to the old one
    loaded: bool  # a checkpoint was loaded: what was cached for the old one is stale
    channels: tuple[int, list[str]] | None  # the inputs the model takes (None: as they were)


class ModelChooser:
    """Owns the model controls (``model_choice``, ``model_file``, ``model_info`` and the range of
    ``L``) and the loaded :attr:`checkpoint`; reports each change to ``on_change``."""

    def __init__(self, controls, viewer, on_change: Callable[[ModelChange], None]):
        self.c, self.viewer, self.on_change = controls, viewer, on_change
        self.checkpoint = None
        self.path = None
        self.user_chose = False  # the user picked a model: layers no longer change it
        self._setting = False
        controls.model_choice.changed.connect(self._on_choice)
        controls.model_file.changed.connect(self._on_choice)

    def _on_choice(self, *_):
        if not self._setting:
            self.user_chose = True
        self.c.model_file.visible = self.c.model_choice.value == FILE_CHOICE
        self.update()

    def set_checkpoint(self, path) -> None:
        """Use the checkpoint file ``path`` (as if chosen with the file button)."""
        self.user_chose = True
        self._setting = True
        try:
            self.c.model_choice.value = FILE_CHOICE
            self.c.model_file.value = str(path)
        finally:
            self._setting = False
        self.c.model_file.visible = True
        self.update()

    def pick_for_layers(self) -> bool:
        """Choose the bundled model that fits the layers (OCT vs BraTS) unless the user chose
        one; True when the choice changed."""
        if self.user_chose:
            return False
        layers = [ly for ly in image_layers(self.viewer) if not is_output(ly)]
        mods = {modality_of(ly) for ly in layers}
        brain = mods & {"flair", "t1", "t1ce", "t2"} or any(
            len(ly.data.shape) == 4 for ly in multichannel_layers(self.viewer, 4))
        # a B-scan, or any plain 2D grayscale image: the one-channel model is the one that can run
        oct_like = "oct" in mods or (layers and all(ly.ndim == 2 for ly in layers))
        want = "bundled OCT model" if oct_like and not brain else "bundled BraTS model"
        if self.c.model_choice.value == want:
            return False
        self._setting = True
        try:
            self.c.model_choice.value = want
        finally:
            self._setting = False
        return True

    def follow_layers(self) -> None:
        """After the layers changed: the bundled model of their modality, unless the user chose."""
        if self.pick_for_layers():
            self.update()

    def update(self) -> None:
        """Load the chosen model (when it is another one) and report the change."""
        from ..core.models.checkpoint import CheckpointError, load_checkpoint

        c = self.c
        path, msg = model_source(c.model_choice.value, c.model_file.value)
        switched = path != self.path
        if path is None:
            self.checkpoint, self.path = None, None
            choice = c.model_choice.value
            c.set_info(c.model_info, msg, "error" if choice in BUNDLED_CHOICES else "warning")
            names = BUNDLED_CHANNELS.get(BUNDLED_CHOICES.get(choice))
            self.on_change(ModelChange(switched, False, (len(names), names) if names else None))
            return
        if switched:
            try:
                ck = load_checkpoint(path)
                if ck.ae_config is None or ck.unet_config is None:
                    raise CheckpointError(f"{path.name} needs both an autoencoder and a diffusion U-Net")
            except CheckpointError as err:
                self.checkpoint, self.path = None, None
                c.set_info(c.model_info, str(err), "error")
                self.on_change(ModelChange(True, False, None))
                return
            self.checkpoint, self.path = ck, path
        ck = self.checkpoint
        names = [str(n) for n in ck.meta.get("channel_names") or []]
        n = ck.in_channels
        desc = ", ".join(names) if names else f"{n} channel(s)"
        max_L = int(ck.meta.get("max_L") or 1000)  # trained for noise levels 1..max_L
        c.L.max = max_L
        c.L.tooltip = f"diffusion steps of noise added to the latent code (1..{max_L} for this model)"
        what = "" if c.model_choice.value in BUNDLED_CHOICES else f" {desc}, {ck.ae_config.image_size} px,"
        c.set_info(c.model_info, f"{msg}:{what} L <= {max_L}, hash {ck.short_hash}")
        self.on_change(ModelChange(switched, switched, (n, names if len(names) == n else [])))
