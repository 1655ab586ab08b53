"""A multi-channel layer seen without its channel axis: the geometry source of a run's outputs."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

__all__ = ["SpatialView", "view_of"]


class SpatialView:
    """A layer seen without its channel axis: ``name``, ``ndim``, ``data.shape``, ``metadata``,
    geometry (``scale``, ``translate``, ``rotate``, ``shear``, ``affine.affine_matrix``,
    ``axis_labels``, ``units``) and ``world_to_data`` / ``data_to_world`` over the spatial axes.

    ``world_ndim``: how many trailing viewer axes run from the view's first axis to the end (its
    first axis is viewer axis ``dims.ndim - world_ndim``); it differs from ``ndim`` only for a
    channel-last layer, whose spatial axes are not the trailing ones (outputs of ``ndim``
    dimensions then sit on other viewer axes: :attr:`aligned` is False)."""

    def __init__(self, layer, channel_axis: int):
        self.layer = layer
        self.channel_axis = int(channel_axis)
        shape = list(layer.data.shape)
        del shape[self.channel_axis]
        self.data = SimpleNamespace(shape=tuple(shape))  # only the shape is read
        self.name = layer.name
        self.metadata = layer.metadata
        self.rgb = bool(layer.rgb)
        nd = layer.ndim  # napari's ndim leaves out the colour axis of RGB layers
        if self.rgb:
            self.ndim, self.world_ndim, self._drop = nd, nd, None
            self.scale, self.translate = tuple(layer.scale), tuple(layer.translate)
            self.rotate, self.shear = np.asarray(layer.rotate), np.asarray(layer.shear)
            self.affine = SimpleNamespace(affine_matrix=np.asarray(layer.affine.affine_matrix))
        else:
            ax = self.channel_axis
            self.ndim, self._drop = nd - 1, ax
            self.world_ndim = nd - 1 if ax == 0 else nd
            self._geometry(layer, ax)
        for key in ("axis_labels", "units"):
            val = getattr(layer, key, None)
            if val is not None and not self.rgb:
                val = tuple(v for i, v in enumerate(val) if i != self.channel_axis)
            setattr(self, key, tuple(val) if val is not None else None)

    @property
    def aligned(self) -> bool:
        """Whether outputs of the view's dimensionality overlay the layer in the viewer."""
        return self.world_ndim == self.ndim

    def _geometry(self, layer, ax):
        from napari.utils.transforms import Affine

        nd = layer.ndim
        keep = [i for i in range(nd) if i != ax]
        scale, tr = np.asarray(layer.scale, float), np.asarray(layer.translate, float)
        rot, shear = np.asarray(layer.rotate, float), np.asarray(layer.shear, float)
        extra = np.asarray(layer.affine.affine_matrix, float)
        plain_shear = np.allclose(shear, 0) if shear.ndim == 1 else np.allclose(shear, np.eye(nd))
        if np.allclose(rot, np.eye(nd)) and plain_shear:
            self.scale, self.translate = tuple(scale[keep]), tuple(tr[keep])
            rows = keep + [nd]
            self.affine = SimpleNamespace(affine_matrix=extra[np.ix_(rows, rows)])
        else:  # the whole data -> world transform, without the channel row and column
            full = extra @ Affine(scale=scale, translate=tr, rotate=rot, shear=shear).affine_matrix
            rows = keep + [nd]
            self.scale, self.translate = (1.0,) * (nd - 1), (0.0,) * (nd - 1)
            self.affine = SimpleNamespace(affine_matrix=full[np.ix_(rows, rows)])
        n = nd - 1
        self.rotate = np.eye(n)
        self.shear = np.zeros(n * (n - 1) // 2)

    def world_to_data(self, position) -> np.ndarray:
        d = np.asarray(self.layer.world_to_data(position), float)
        return d if self._drop is None else np.delete(d, self._drop)

    def data_to_world(self, position) -> np.ndarray:
        pos = np.asarray(position, float)
        if self._drop is None:
            return np.asarray(self.layer.data_to_world(pos), float)
        w = np.asarray(self.layer.data_to_world(np.insert(pos, self._drop, 0.0)), float)
        return w[1:] if self._drop == 0 else w[:-1]


def view_of(layers: list, channel_axis: int | None):
    """The geometry source of a run's outputs: the first input layer, or the spatial view of a
    multi-channel layer."""
    return layers[0] if channel_axis is None else SpatialView(layers[0], channel_axis)
