"""The widget's input chooser: one layer chooser per model channel, labelled with the model's
channel names and auto-filled from the layers (the BraTS modality layers by name or metadata)
until the user changes one; or one multi-channel layer (``(C, Z, Y, X)``, ``(Z, Y, X, C)``,
``(C, Y, X)``, RGB(A)) whose channel axis has the model's length, picked automatically when no full
set of modality layers exists. A layer that does not match says which channels the model
expects (and the widget keeps Run disabled)."""

from __future__ import annotations

from typing import Callable

from .inputs import (InputError, auto_pick, find_channel_axis, fit_note, image_layers, is_output,
                     modality_of, multichannel_layers, pixel_spacing, title_of, view_of)
from .reader import MODALITY_TITLES
from .widget_controls import elide_combo

__all__ = ["InputChooser"]


class InputChooser:
    """Owns the input controls (``multi``, the per-channel :attr:`combos` in ``inputs``,
    ``input_info``) and their state. ``on_layers()`` after the choices followed the viewer's
    layers, ``on_choice()`` after the user chose, ``on_rows()`` after the rows were rebuilt."""

    def __init__(self, controls, viewer, *, on_layers: Callable[[], None],
                 on_choice: Callable[[], None], on_rows: Callable[[], None]):
        self.c, self.viewer = controls, viewer
        self._on_layers, self._on_choice, self._on_rows = on_layers, on_choice, on_rows
        self.combos: list = []  # one layer chooser per model channel
        self.channel_names: list[str] = []
        self.user_chose = False  # the user picked an input: auto-filling never undoes it
        self._setting = False
        controls.multi.changed.connect(self._multi_chosen)
        ev = viewer.layers.events
        for name in ("inserted", "removed", "reordered"):
            getattr(ev, name).connect(self.refresh)
        if hasattr(ev, "renamed"):
            ev.renamed.connect(self.refresh)

    def set_channels(self, n: int, names: list[str]) -> None:
        """One chooser per channel of the model (labelled with its channel names)."""
        from magicgui.widgets import ComboBox

        if len(self.combos) == n and names == self.channel_names:
            self.refresh()
            return
        self.c.inputs.clear()
        self.channel_names = names
        self.combos = []
        for i in range(n):
            if n == 1:
                label = "input"
            else:
                label = MODALITY_TITLES.get(names[i].lower(), names[i]) if names else f"channel {i}"
            combo = ComboBox(label=label, choices=[], nullable=True)
            elide_combo(combo)
            combo.changed.connect(self._combo_chosen)
            self.combos.append(combo)
            self.c.inputs.append(combo)
        self.refresh()
        self._on_rows()

    def refresh(self, event=None) -> None:
        """Update the input choices from the viewer's image layers and auto-pick.

        Until the user chooses inputs, a complete pick stays as it is (a run's output layers, a
        reorder or a renamed layer never move it) and switches only to a layer just opened, once
        it fits (a lone file, or the last modality of a new case); an incomplete pick is refilled
        from the active layer's case, as far as it goes."""
        layers = [ly for ly in image_layers(self.viewer) if not is_output(ly)]
        n = len(self.combos)
        multis = [ly for ly in multichannel_layers(self.viewer, n) if not is_output(ly)]
        choices = [(ly.name, ly) for ly in layers]
        new = getattr(event, "value", None) if getattr(event, "type", None) == "inserted" else None
        new = new if new in layers or new in multis else None
        active = self.viewer.layers.selection.active
        focus = new if new is not None else (None if active is None or is_output(active) else active)
        self._setting = True
        try:
            for combo in self.combos:
                old = combo.value
                combo.choices = choices
                combo.value = old if old in layers else None
            old_multi = self.c.multi.value
            self.c.multi.choices = [(ly.name, ly) for ly in multis]
            self.c.multi.value = old_multi if old_multi in multis else None
            current = [cb.value for cb in self.combos]
            complete = self.c.multi.value is not None or bool(current) and None not in current
            if not complete or (not self.user_chose and new is not None):
                self._auto_fill(layers, multis, n, focus, only_with=new if complete else None)
        finally:
            self._setting = False
        self._show_channel_inputs()
        self._on_layers()

    def _auto_fill(self, layers, multis, n, focus, only_with=None):
        """Fill the inputs: a full set of per-channel layers, else a fitting multi-channel layer,
        else as many channels as one case has. ``only_with``: change nothing unless the new pick
        uses that layer (a complete pick gives way only to a layer just opened)."""
        full = auto_pick(layers, self.channel_names, n, active=focus)
        multi = None if full else self._fitting_multi(multis, focus, n)
        pick = full or (None if multi is not None else auto_pick(
            layers, self.channel_names, n, active=focus, partial=True))
        if only_with is not None and not (multi is only_with or (full and only_with in full)):
            return
        if multi is not None:
            self.c.multi.value = multi
            return
        for combo, ly in zip(self.combos, pick or [None] * n):
            if not self.user_chose or combo.value is None:  # never undo the user's choice
                combo.value = ly
        self.c.multi.value = None

    @staticmethod
    def _fitting_multi(multis: list, active, n: int):
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
        for combo in self.combos:
            if combo.visible != show:
                combo.visible = show

    def _combo_chosen(self, *_):
        if not self._setting:
            self.user_chose = True
        self._on_choice()

    def _multi_chosen(self, *_):
        if not self._setting:
            self.user_chose = True
        self._show_channel_inputs()
        self._on_choice()

    def source(self) -> tuple[list, int | None]:
        """(layers, channel axis): one layer per channel (axis None) or one multi-channel layer
        and the axis of its channels. Raises :class:`InputError` with what is missing or wrong."""
        multi = self.c.multi.value
        if multi is not None:
            return [multi], find_channel_axis(multi, len(self.combos), self.channel_names)
        layers = [cb.value for cb in self.combos]
        if not layers or any(ly is None for ly in layers):
            raise InputError("choose the input layer(s)" + (
                f" for {', '.join(self.channel_names)}" if self.channel_names else "")
                + " or one multi-channel layer")
        return layers, None

    def check(self, checkpoint) -> bool:
        """Whether the inputs fit the model; says why not (or how they are fitted) under them."""
        c = self.c
        if not self.combos:
            c.set_info(c.input_info, "")
            return False
        try:
            layers, axis = self.source()
        except InputError as err:
            c.set_info(c.input_info, str(err), "error" if c.multi.value is not None else "info")
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
            c.set_info(c.input_info, f"{src.name} is {src.ndim}D without channels; the widget "
                                     f"takes 2D images or 3D stacks", "error")
            return False
        if src.ndim == 3:  # the slice range cannot run past the stack
            top = int(src.data.shape[0]) - 1
            for box in (c.range_from, c.range_to):
                if box.max != top:
                    box.max = top
        if checkpoint is not None:
            for note in (fit_note(checkpoint, tuple(src.data.shape[-2:]), pixel_spacing(src)),
                         _modality_note(checkpoint, layers, axis)):
                if note:
                    notes.append(note)
                    level = "warning"
        c.set_info(c.input_info, "; ".join(notes), level)
        return True


def _modality_note(checkpoint, layers: list, axis) -> str | None:
    """A warning when the input layers are known to be another modality than the model's
    channels (the OCT model on a FLAIR volume)."""
    want = [str(n).lower() for n in checkpoint.meta.get("channel_names") or []]
    if axis is not None or len(want) != len(layers):
        return None
    got = [modality_of(ly) for ly in layers]
    wrong = [(ly, m, w) for ly, m, w in zip(layers, got, want) if m is not None and m != w]
    if not wrong:
        return None
    ly, m, w = wrong[0]
    return (f"{ly.name} looks like {title_of(m)} but the model's channel is {title_of(w)}: the "
            f"result is only meaningful on the modality it was trained on")
