"""The widget's model and input-layer choosers (a mixin of :class:`~napari_berdiff._widget.BerdiffWidget`).

The model is the bundled one for the modality of the layers (BraTS or OCT) unless the user picks a
checkpoint file; a missing bundled model is a clear message in the widget and Run stays disabled.
One input chooser per model channel, labelled with the model's channel names and auto-filled from
the layers (the BraTS modality layers by name or metadata) until the user changes one.
"""

from __future__ import annotations

from ._inputs import (BUNDLED_CHANNELS, BUNDLED_CHOICES, FILE_CHOICE, InputError, auto_pick,
                      image_layers, modality_of, model_source)
from ._reader import MODALITY_TITLES


class ModelInputs:
    """Model and input selection; expects the attributes set by BerdiffWidget.__init__."""

    def _on_model_choice(self, *_):
        if not self._setting:
            self._user_model = True
        self.c.model_file.visible = self.c.model_choice.value == FILE_CHOICE
        self._on_model_changed()

    def _auto_model(self):
        """Pick the bundled model that fits the layers (OCT vs BraTS) unless the user chose one."""
        if self._user_model:
            return
        mods = {modality_of(ly) for ly in image_layers(self.viewer)}
        want = "bundled OCT model" if "oct" in mods and not mods & {"flair", "t1", "t1ce", "t2"} else "bundled BraTS model"
        if self.c.model_choice.value != want:
            self._setting = True
            try:
                self.c.model_choice.value = want
            finally:
                self._setting = False

    # -- model -----------------------------------------------------------------------------
    def set_checkpoint(self, path) -> None:
        """Use the checkpoint file ``path`` (as if chosen with the file button)."""
        self._user_model = True
        self._setting = True
        try:
            self.c.model_choice.value = FILE_CHOICE
            self.c.model_file.value = str(path)
        finally:
            self._setting = False
        self.c.model_file.visible = True
        self._on_model_changed()

    def _on_model_changed(self):
        from .core.checkpoint import CheckpointError, load_checkpoint

        path, msg = model_source(self.c.model_choice.value, self.c.model_file.value)
        if path is None:
            self.checkpoint, self._ck_path = None, None
            choice = self.c.model_choice.value
            self.c.set_info(self.c.model_info, msg, "error" if choice in BUNDLED_CHOICES else "warning")
            if choice in BUNDLED_CHOICES:
                names = BUNDLED_CHANNELS[BUNDLED_CHOICES[choice]]
                self._set_channels(len(names), names)
            self._update_buttons()
            return
        if path != self._ck_path:
            try:
                ck = load_checkpoint(path)
                if ck.ae_config is None or ck.unet_config is None:
                    raise CheckpointError(f"{path.name} needs both an autoencoder and a diffusion U-Net")
            except CheckpointError as err:
                self.checkpoint, self._ck_path = None, None
                self.c.set_info(self.c.model_info, str(err), "error")
                self._update_buttons()
                return
            self.checkpoint, self._ck_path = ck, path
            self._detector = (None, None)
            self._invalidate()
        ck = self.checkpoint
        names = [str(n) for n in ck.meta.get("channel_names") or []]
        n = ck.in_channels
        desc = ", ".join(names) if names else f"{n} channel(s)"
        self.c.set_info(self.c.model_info, f"{msg}: {desc}, {ck.ae_config.image_size} px, "
                                           f"hash {ck.short_hash}")
        self._set_channels(n, names if len(names) == n else [])
        self._update_buttons()

    def _set_channels(self, n: int, names: list[str]):
        from magicgui.widgets import ComboBox

        if len(self._combos) == n and names == self._channel_names:
            self.refresh_inputs()
            return
        self.c.inputs.clear()
        self._channel_names = names
        self._combos = []
        for i in range(n):
            if n == 1:
                label = "input"
            else:
                label = MODALITY_TITLES.get(names[i].lower(), names[i]) if names else f"channel {i}"
            combo = ComboBox(label=label, choices=[], nullable=True)
            combo.changed.connect(self._on_input_choice)
            self._combos.append(combo)
            self.c.inputs.append(combo)
        self.refresh_inputs()

    # -- inputs ----------------------------------------------------------------------------
    def refresh_inputs(self, *_):
        """Update the input choices from the viewer's image layers; auto-pick when unset."""
        layers = [ly for ly in image_layers(self.viewer) if not self._is_output(ly)]
        choices = [(ly.name, ly) for ly in layers]
        self._setting = True
        try:
            for combo in self._combos:
                old = combo.value
                combo.choices = choices
                combo.value = old if old in layers else None
            current = [cb.value for cb in self._combos]
            if not self._user_inputs or any(v is None for v in current):
                pick = auto_pick(layers, self._channel_names, len(self._combos),
                                 active=self.viewer.layers.selection.active)
                if pick:
                    for combo, ly in zip(self._combos, pick):
                        combo.value = ly
        finally:
            self._setting = False
        self._auto_model_if_needed()
        self._update_buttons()

    def _auto_model_if_needed(self):
        if not self._user_model:
            before = self.c.model_choice.value
            self._auto_model()
            if self.c.model_choice.value != before:
                self._on_model_changed()

    def _is_output(self, layer) -> bool:
        return "provenance" in (layer.metadata or {})

    def _on_input_choice(self, *_):
        if not self._setting:
            self._user_inputs = True
        self._update_buttons()

    def input_layers(self) -> list:
        layers = [cb.value for cb in self._combos]
        if not layers or any(ly is None for ly in layers):
            raise InputError("choose the input layer(s)" + (
                f" for {', '.join(self._channel_names)}" if self._channel_names else ""))
        return layers

