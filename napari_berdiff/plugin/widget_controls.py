"""The widget's controls (magicgui widgets in a Qt layout); no behaviour here."""

from __future__ import annotations

from magicgui.widgets import (CheckBox, ComboBox, Container, FileEdit, FloatSlider, Label,
                              LineEdit, PushButton, Slider, SpinBox)
from qtpy.QtWidgets import QDoubleSpinBox

from ..core.diffusion.thresholds import canonical_p
from ..core.inference.settings import DEFAULTS, DetectSettings, format_sweep
from .inputs import BUNDLED_CHOICES, FILE_CHOICE, parse_sweep
from .segmenter import MODES

SCOPES = ("current slice", "all slices", "slice range")
PLUGIN = "napari-berdiff"
# the manifest's configurations.widget keys that are detection settings, and their fields
PREFERENCES = {"noise_level": "L", "threshold": "P", "steps": "steps", "p_sweep": "p_sweep",
               "seed": "seed"}


def plugin_defaults() -> dict:
    """The widget defaults from napari's preferences (the manifest's ``configurations.widget``:
    device, checkpoint, noise_level, threshold, steps, p_sweep, seed); {} where napari has no
    plugin settings (napari < 0.9) or the plugin is not registered (a bare widget in a test)."""
    try:
        from napari.settings import get_plugin_settings

        widget = get_plugin_settings(PLUGIN).widget
    except (ImportError, KeyError, AttributeError):
        return {}
    keys = ("device", "checkpoint", *PREFERENCES)
    return {k: getattr(widget, k) for k in keys if hasattr(widget, k)}


COMBO_CHARS = 14  # a combo box is this many characters wide; longer layer names are elided


def elide_combo(combo: ComboBox) -> None:
    """Keep a combo box at a fixed text width however long its items (BraTS layer names are
    long): the dock stays narrow and no control is pushed out of sight."""
    from qtpy.QtWidgets import QComboBox

    native = combo.native
    native.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    native.setMinimumContentsLength(COMBO_CHARS)


class Controls:
    """All input widgets of :class:`~napari_berdiff.plugin.widget.BerdiffWidget`, grouped."""

    def __init__(self, devices: list[str]):
        self._model_and_input()
        self._detection_settings()
        self._run_controls(devices)
        self._lay_out()
        self._style()
        self.scope.changed.connect(self._on_scope)

    def _model_and_input(self) -> None:
        """The model chooser and the input layers."""
        self.model_choice = ComboBox(label="model", choices=[*BUNDLED_CHOICES, FILE_CHOICE])
        self.model_file = FileEdit(label="checkpoint", mode="r", filter="*.pt", visible=False)
        self.model_info = Label(label="", value="")
        self.multi = ComboBox(label="multi-channel layer", choices=[], nullable=True,
                              tooltip="one layer holding all the model's channels: (C, Z, Y, X), "
                                      "(Z, Y, X, C), (C, Y, X) or RGB(A); leave empty to choose "
                                      "one layer per channel below")
        self.inputs = Container(labels=True)
        self.input_info = Label(label="", value="")

    def _detection_settings(self) -> None:
        """L, P, segmentation, steps, seed and the P sweep."""
        self.L = Slider(label="noise level L", min=1, max=1000, value=DEFAULTS.L,
                        tooltip="diffusion steps of noise added to the latent code (1..1000)")
        self.P = FloatSlider(label="threshold P", min=0.0, max=1.0, step=0.01, value=DEFAULTS.P,
                             tooltip="a latent bit is masked (resampled) once its flip probability "
                                     "exceeds P; P = 0 masks everything, P = 1 nothing")
        self.seg_mode = ComboBox(label="segmentation", choices=list(MODES),
                                 tooltip="calibrated: map > the model's calibrated threshold (as "
                                         "berdiff detect); paper: each slice's map scaled to its "
                                         "own percentiles, > 0.5 (every slice gets a mask)")
        self.seg_threshold = FloatSlider(label="map threshold", min=0.0, max=1.0, step=0.001,
                                         value=0.0, enabled=False,
                                         tooltip="segment the anomaly map above this value "
                                                 "(re-segments the last run, no sampling)")
        self.seg_info = Label(label="", value="")
        self.steps = SpinBox(label="steps S", min=1, max=200, value=DEFAULTS.steps,
                             tooltip="strided denoising steps from L down to 0 (1..L)")
        self.seed = SpinBox(label="seed", min=0, max=2**31 - 1, value=DEFAULTS.seed)
        self.sweep_on = CheckBox(text="sample a P sweep (instant P slider)", value=True)
        self.sweep = LineEdit(label="P sweep", value=format_sweep(DEFAULTS.p_sweep),
                              tooltip="P values sampled in one batch: 0.1, 0.3, 0.5 or 0.1:0.9:0.1")

    def _run_controls(self, devices: list[str]) -> None:
        """Device, scope, Run / Cancel, status and the view controls."""
        self.device = ComboBox(label="device", choices=devices)
        self.device_info = Label(label="", value="")
        self.scope = ComboBox(label="scope", choices=list(SCOPES))
        self.range_from = SpinBox(label="from slice", min=0, max=10_000, value=0, visible=False)
        self.range_to = SpinBox(label="to slice", min=0, max=10_000, value=0, visible=False)
        self.live = CheckBox(text="re-run when L or P changes", value=True)
        self.run = PushButton(text="Run")
        self.cancel = PushButton(text="Cancel", enabled=False)
        self.status = Label(label="", value="")
        self.evolution_step = Slider(label="mask evolution step", min=0, max=0, value=0,
                                     enabled=False,
                                     tooltip="the sampler step the mask evolution layer shows "
                                             "(the share of latent bits masked)")
        self.grid = PushButton(text="Side by side",
                               tooltip="napari's grid view: input | reconstruction | difference "
                                       "(first channel); press again to undo")

    def _lay_out(self) -> None:
        """The scrolling settings container and the pinned footer."""
        buttons = Container(widgets=[self.run, self.cancel], layout="horizontal", labels=False)
        buttons.margins = (0, 0, 0, 0)
        # the settings scroll; Run, Cancel and the status line stay pinned below them (the
        # masked-fraction dock that opens at the first run takes half of a short dock)
        self.container = Container(widgets=[
            self.model_choice, self.model_file, self.model_info, self.multi, self.inputs,
            self.input_info, self.L, self.P, self.seg_mode, self.seg_threshold, self.seg_info,
            self.steps, self.seed, self.sweep_on, self.sweep, self.device, self.device_info,
            self.scope, self.range_from, self.range_to, self.live, self.evolution_step, self.grid,
        ], labels=True)
        self.footer = Container(widgets=[buttons, self.status], labels=False)

    def _style(self) -> None:
        """Word wrap, the status line's height, 4 decimals, elided combo boxes."""
        for lab in (self.model_info, self.input_info, self.seg_info, self.device_info, self.status):
            lab.native.setWordWrap(True)
        # the pinned status line keeps room for two lines (a wrapped message is never clipped)
        lines = self.status.native.fontMetrics().lineSpacing()
        self.status.native.setMinimumHeight(2 * lines + 6)
        readout = self.seg_threshold.native.findChildren(QDoubleSpinBox)
        for spin in readout:  # calibrated thresholds are small numbers (e.g. 0.0619)
            spin.setDecimals(4)
        for combo in (self.model_choice, self.multi, self.seg_mode, self.device, self.scope):
            elide_combo(combo)

    def _on_scope(self, value):
        self.range_from.visible = self.range_to.visible = value == "slice range"

    def apply_defaults(self, d: dict) -> None:
        """Start from the user's preferences (see :func:`plugin_defaults`); call before the
        widgets are connected. A device that is not available stays selectable: it runs on the
        CPU with the usual visible warning."""
        if "noise_level" in d:
            self.L.value = int(d["noise_level"])
        self.steps.max = int(self.L.value)
        if "steps" in d:
            self.steps.value = min(int(d["steps"]), int(self.L.value))
        if "threshold" in d:
            self.P.value = float(d["threshold"])
        if "seed" in d:
            self.seed.value = int(d["seed"])
        if "p_sweep" in d:
            self.sweep.value = str(d["p_sweep"])
            self.sweep_on.value = bool(str(d["p_sweep"]).strip())
        dev = str(d.get("device") or "").strip()
        if dev:
            if dev not in self.device.choices:
                self.device.choices = [*self.device.choices, dev]
            self.device.value = dev

    def settings(self) -> DetectSettings:
        """The detection settings the controls show (InputError for an unreadable P sweep)."""
        sweep = parse_sweep(self.sweep.value) if self.sweep_on.value else []
        return DetectSettings(L=int(self.L.value), P=canonical_p(self.P.value),
                              steps=int(self.steps.value), seed=int(self.seed.value),
                              p_sweep=tuple(sweep))

    def message(self, text: str, level: str = "info") -> None:
        """The status line (an error also as a napari notification)."""
        self.set_info(self.status, text, level)
        if level == "error":
            from napari.utils.notifications import show_error

            show_error(f"napari-berdiff: {text}")

    def device_note(self, text: str, warning: str | None = None) -> None:
        """Where the run goes (``text``: "runs on cpu"), with a warning when the device asked
        for is not the one used."""
        self.set_info(self.device_info, text + (f": {warning}" if warning else ""),
                      "warning" if warning else "info")

    def device_ran(self, prov: dict) -> None:
        """After a run: where it ran (a run's provenance), and a visible warning where that is
        not the device asked for."""
        warn = prov.get("device_warning")
        if warn:
            from napari.utils.notifications import show_warning

            show_warning(f"napari-berdiff: {warn}")
        self.device_note(f"ran on {prov['device']}", warn)

    def set_info(self, label: Label, text: str, level: str = "info") -> None:
        colour = {"info": "", "warning": "color: #e0a030;", "error": "color: #f05050;"}[level]
        if label.native.styleSheet() != colour:  # restyling re-lays out the dock: only on change
            label.native.setStyleSheet(colour)
        if label.value != text:
            label.value = text
            if label is self.status:
                self.fit_status()

    def fit_status(self) -> None:
        """Give the status line the height its wrapped text needs (at least two lines): a layout
        keeps a word-wrapped label at its first height, which cut a three-line message."""
        native = self.status.native
        base = 2 * native.fontMetrics().lineSpacing() + 6
        need = native.heightForWidth(native.width()) if native.width() > 0 else -1
        native.setMinimumHeight(max(base, need))
