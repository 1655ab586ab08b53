"""The widget's model and input-layer choosers (a mixin of :class:`~napari_berdiff.plugin.widget.BerdiffWidget`).

The model is the bundled one for the modality of the layers (BraTS or OCT) unless the user picks a
checkpoint file; a missing bundled model is a clear message in the widget and Run stays disabled.
One input chooser per model channel, labelled with the model's channel names and auto-filled from
the layers (the BraTS modality layers by name or metadata) until the user changes one; or one
multi-channel layer (``(C, Z, Y, X)``, ``(Z, Y, X, C)``, ``(C, Y, X)``, RGB(A)) whose channel axis
has the model's length, picked automatically when no full set of modality layers exists. A
layer that does not match says which channels the model expects, and Run stays disabled.
"""

from __future__ import annotations

from .inputs import (BUNDLED_CHANNELS, BUNDLED_CHOICES, FILE_CHOICE, InputError, auto_pick,
                      find_channel_axis, fit_note, image_layers, modality_of, model_source,
                      multichannel_layers, title_of, view_of)
from .reader import MODALITY_TITLES
from .widget_controls import elide_combo


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
        layers = [ly for ly in image_layers(self.viewer) if not self._is_output(ly)]
        mods = {modality_of(ly) for ly in layers}
        brain = mods & {"flair", "t1", "t1ce", "t2"} or any(
            len(ly.data.shape) == 4 for ly in multichannel_layers(self.viewer, 4))
        # a B-scan, or any plain 2D grayscale image: the one-channel model is the one that can run
        oct_like = "oct" in mods or (layers and all(ly.ndim == 2 for ly in layers))
        want = "bundled OCT model" if oct_like and not brain else "bundled BraTS model"
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
        from ..core.models.checkpoint import CheckpointError, load_checkpoint

        path, msg = model_source(self.c.model_choice.value, self.c.model_file.value)
        if path != self._ck_path and self.worker is not None:
            self._stop_worker()  # its outputs would belong to the model no longer shown
            self._message("cancelled: the model changed", "warning")
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
        what = "" if self.c.model_choice.value in BUNDLED_CHOICES else f" {desc}, {ck.ae_config.image_size} px,"
        self.c.set_info(self.c.model_info, f"{msg}:{what} L <= {max_L}, hash {ck.short_hash}")
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
            elide_combo(combo)
            combo.changed.connect(self._on_input_choice)
            self._combos.append(combo)
            self.c.inputs.append(combo)
        self.refresh_inputs()
        from qtpy.QtCore import QTimer

        QTimer.singleShot(0, self.fit_width)  # once the new rows are laid out

    # -- inputs ----------------------------------------------------------------------------
    def refresh_inputs(self, event=None):
        """Update the input choices from the viewer's image layers and auto-pick.

        Until the user chooses inputs, the widget keeps a complete pick as it is (a run's output
        layers, a reorder or a renamed layer never move it) and switches only to a layer just
        opened, once it fits (a lone file, or the last modality of a new case); an incomplete
        pick is refilled from the active layer's case, as far as it goes."""
        layers = [ly for ly in image_layers(self.viewer) if not self._is_output(ly)]
        n = len(self._combos)
        multis = [ly for ly in multichannel_layers(self.viewer, n) if not self._is_output(ly)]
        choices = [(ly.name, ly) for ly in layers]
        new = getattr(event, "value", None) if getattr(event, "type", None) == "inserted" else None
        new = new if new in layers or new in multis else None
        active = self.viewer.layers.selection.active
        focus = new if new is not None else (None if active is None or self._is_output(active) else active)
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
            complete = self.c.multi.value is not None or bool(current) and None not in current
            if not complete or (not self._user_inputs and new is not None):
                self._auto_fill(layers, multis, n, focus, only_with=new if complete else None)
        finally:
            self._setting = False
        self._show_channel_inputs()
        self._auto_model_if_needed()
        self._update_buttons()

    def _auto_fill(self, layers, multis, n, focus, only_with=None):
        """Fill the inputs: a full set of per-channel layers, else a fitting multi-channel layer,
        else as many channels as one case has. ``only_with``: change nothing unless the new pick
        uses that layer (a complete pick gives way only to a layer just opened)."""
        full = auto_pick(layers, self._channel_names, n, active=focus)
        multi = None if full else self._fitting_multi(multis, focus, n)
        pick = full or (None if multi is not None else auto_pick(
            layers, self._channel_names, n, active=focus, partial=True))
        if only_with is not None and not (multi is only_with or (full and only_with in full)):
            return
        if multi is not None:
            self.c.multi.value = multi
            return
        for combo, ly in zip(self._combos, pick or [None] * n):
            if not self._user_inputs or combo.value is None:  # never undo the user's choice
                combo.value = ly
        self.c.multi.value = None

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
        if src.ndim == 3:  # the slice range cannot run past the stack
            top = int(src.data.shape[0]) - 1
            for box in (self.c.range_from, self.c.range_to):
                if box.max != top:
                    box.max = top
        if self.checkpoint is not None:
            for note in (fit_note(self.checkpoint, tuple(src.data.shape[-2:]), self.pixel_spacing(src)),
                         self._modality_note(layers, axis)):
                if note:
                    notes.append(note)
                    level = "warning"
        self.c.set_info(self.c.input_info, "; ".join(notes), level)
        return True

    @staticmethod
    def pixel_spacing(src) -> tuple[float, float] | None:
        """(rows, cols) pixel size in mm of the model's slices of a volume read from a NIfTI file
        (its affine in the metadata; the rows run along R, the columns along A), else None."""
        affine = (src.metadata or {}).get("affine")
        if affine is None or src.ndim != 3:
            return None
        from ..core.io.orientation import canonical_zooms

        return tuple(canonical_zooms(affine)[:2])

    def _modality_note(self, layers: list, axis) -> str | None:
        """A warning when the input layers are known to be another modality than the model's
        channels (the OCT model on a FLAIR volume)."""
        want = [str(n).lower() for n in self.checkpoint.meta.get("channel_names") or []]
        if axis is not None or len(want) != len(layers):
            return None
        got = [modality_of(ly) for ly in layers]
        wrong = [(ly, m, w) for ly, m, w in zip(layers, got, want) if m is not None and m != w]
        if not wrong:
            return None
        ly, m, w = wrong[0]
        return (f"{ly.name} looks like {title_of(m)} but the model's channel is "
                f"{title_of(w)}: the result is only meaningful on the modality "
                f"it was trained on")
