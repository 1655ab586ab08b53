"""The widget's model and input-layer choosers (a mixin of :class:`~napari_berdiff._widget.BerdiffWidget`).

The model is the bundled one for the modality of the layers (BraTS or OCT) unless the user picks a
checkpoint file; a missing bundled model is a clear message in the widget and Run stays disabled.
One input chooser per model channel, labelled with the model's channel names and auto-filled from
the layers (the BraTS modality layers by name or metadata) until the user changes one; or one
multi-channel layer (``(C, Z, Y, X)``, ``(Z, Y, X, C)``, ``(C, Y, X)``, RGB(A)) whose channel axis
has the model's length, picked automatically when no full set of modality layers exists. A
layer that does not match says which channels the model expects, and Run stays disabled.
"""

from __future__ import annotations

from ._inputs import (BUNDLED_CHANNELS, BUNDLED_CHOICES, FILE_CHOICE, InputError, auto_pick,
                      find_channel_axis, fit_note, image_layers, modality_of, model_source,
                      multichannel_layers, view_of)
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
        max_L = int(ck.meta.get("max_L") or 1000)  # trained for noise levels 1..max_L
        self.c.L.max = max_L
        self.c.L.tooltip = f"diffusion steps of noise added to the latent code (1..{max_L} for this model)"
        self.c.set_info(self.c.model_info, f"{msg}: {desc}, {ck.ae_config.image_size} px, "
                                           f"L <= {max_L}, hash {ck.short_hash}")
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
        n = len(self._combos)
        multis = [ly for ly in multichannel_layers(self.viewer, n) if not self._is_output(ly)]
        choices = [(ly.name, ly) for ly in layers]
        active = self.viewer.layers.selection.active
        self._setting = True
        try:
            for combo in self._combos:
                old = combo.value
                combo.choices = choices
                combo.value = old if old in layers else None
            old_multi = self.c.multi.value
            self.c.multi.choices = [(ly.name, ly) for ly in multis]
            self.c.multi.value = old_multi if old_multi in multis else None
            current = [cb.value for cb in self._combos]
            if not self._user_inputs or (self.c.multi.value is None and any(v is None for v in current)):
                pick = auto_pick(layers, self._channel_names, n, active=active)
                if pick:
                    for combo, ly in zip(self._combos, pick):
                        combo.value = ly
                per_channel = bool(pick)
                self.c.multi.value = None if per_channel else self._fitting_multi(multis, active, n)
        finally:
            self._setting = False
        self._show_channel_inputs()
        self._auto_model_if_needed()
        self._update_buttons()

    def _fitting_multi(self, multis: list, active, n: int):
        """The multi-channel layer to pick: the active one if it fits, else the last that fits;
        3D layers named or tagged as one modality are single channels, not picked."""
        if not n:
            return None
        order = ([active] if active in multis else []) + multis[::-1]
        for ly in order:
            if len(ly.data.shape) == 3 and not ly.rgb and modality_of(ly) is not None:
                continue
            try:
                find_channel_axis(ly, n)
            except InputError:
                continue
            if n == 1 and not (ly.rgb or len(ly.data.shape) == 4):
                continue
            return ly
        return None

    def _show_channel_inputs(self):
        """One layer per channel, or (hidden then) one multi-channel layer."""
        show = self.c.multi.value is None
        for combo in self._combos:
            if combo.visible != show:
                combo.visible = show

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

    def _on_multi_choice(self, *_):
        if not self._setting:
            self._user_inputs = True
        self._show_channel_inputs()
        self._update_buttons()

    def input_source(self) -> tuple[list, int | None]:
        """(layers, channel axis): one layer per channel (axis None) or one multi-channel layer
        and the axis of its channels. Raises :class:`InputError` with what is missing or wrong."""
        multi = self.c.multi.value
        if multi is not None:
            return [multi], find_channel_axis(multi, len(self._combos), self._channel_names)
        layers = [cb.value for cb in self._combos]
        if not layers or any(ly is None for ly in layers):
            raise InputError("choose the input layer(s)" + (
                f" for {', '.join(self._channel_names)}" if self._channel_names else "")
                + " or one multi-channel layer")
        return layers, None

    def input_layers(self) -> list:
        return self.input_source()[0]

    def check_inputs(self) -> bool:
        """Whether the inputs fit the model; says why not (or how they are fitted) under them."""
        if not self._combos:
            self.c.set_info(self.c.input_info, "")
            return False
        try:
            layers, axis = self.input_source()
        except InputError as err:
            self.c.set_info(self.c.input_info, str(err), "error" if self.c.multi.value is not None else "info")
            return False
        src = view_of(layers, axis)
        notes, level = [], "info"
        if axis is not None:
            notes.append(f"channels from axis {axis} of {src.name}" if not src.rgb
                         else f"channels from the colours of {src.name}")
            if not src.aligned:
                level = "warning"
                notes.append("its channels are on the last axis, so napari lines the (Z, Y, X) "
                             "outputs up with other axes: put the channels first (np.moveaxis) "
                             "to overlay them")
        if src.ndim not in (2, 3):
            self.c.set_info(self.c.input_info, f"{src.name} is {src.ndim}D without channels; the "
                                               f"widget takes 2D images or 3D stacks", "error")
            return False
        if self.checkpoint is not None:
            note = fit_note(self.checkpoint, tuple(src.data.shape[-2:]))
            if note:
                notes.append(note)
                level = "warning"
        self.c.set_info(self.c.input_info, "; ".join(notes), level)
        return True

