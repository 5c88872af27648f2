"""Write the small offline intersphinx inventories used when the docs build has no internet.

Each inventory lists only the objects that greyanom's docs cite, with their real URLs on the
projects' sites (format: Sphinx inventory version 2). Run ``python make_inventories.py`` in this
folder after citing a new external object.
"""

import zlib
from pathlib import Path

OBJECTS = {
    "python": {
        "py:class": {
            "str": "library/stdtypes.html#str",
            "int": "library/functions.html#int",
            "float": "library/functions.html#float",
            "bool": "library/functions.html#bool",
            "dict": "library/stdtypes.html#dict",
            "list": "library/stdtypes.html#list",
            "tuple": "library/stdtypes.html#tuple",
            "pathlib.Path": "library/pathlib.html#pathlib.Path",
        },
        "py:exception": {
            "ValueError": "library/exceptions.html#ValueError",
            "TypeError": "library/exceptions.html#TypeError",
            "ImportError": "library/exceptions.html#ImportError",
            "RuntimeError": "library/exceptions.html#RuntimeError",
        },
        "py:data": {"None": "library/constants.html#None"},
    },
    "numpy": {
        "py:class": {
            "numpy.ndarray": "reference/generated/numpy.ndarray.html#numpy.ndarray",
            "numpy.dtype": "reference/generated/numpy.dtype.html#numpy.dtype",
            "numpy.random.Generator": "reference/random/generator.html#numpy.random.Generator",
            "numpy.random.RandomState": "reference/random/legacy.html#numpy.random.RandomState",
        },
    },
    "scipy": {
        "py:function": {
            "scipy.optimize.least_squares": "reference/generated/scipy.optimize.least_squares.html#scipy.optimize.least_squares",
            "scipy.optimize.curve_fit": "reference/generated/scipy.optimize.curve_fit.html#scipy.optimize.curve_fit",
            "scipy.integrate.solve_ivp": "reference/generated/scipy.integrate.solve_ivp.html#scipy.integrate.solve_ivp",
            "scipy.ndimage.gaussian_filter": "reference/generated/scipy.ndimage.gaussian_filter.html#scipy.ndimage.gaussian_filter",
            "scipy.io.loadmat": "reference/generated/scipy.io.loadmat.html#scipy.io.loadmat",
        },
    },
    "sklearn": {
        "py:class": {
            "sklearn.decomposition.PCA": "modules/generated/sklearn.decomposition.PCA.html#sklearn.decomposition.PCA",
            "sklearn.base.BaseEstimator": "modules/generated/sklearn.base.BaseEstimator.html#sklearn.base.BaseEstimator",
            "sklearn.pipeline.Pipeline": "modules/generated/sklearn.pipeline.Pipeline.html#sklearn.pipeline.Pipeline",
            "sklearn.utils.Bunch": "modules/generated/sklearn.utils.Bunch.html#sklearn.utils.Bunch",
            "sklearn.ensemble.IsolationForest": "modules/generated/sklearn.ensemble.IsolationForest.html#sklearn.ensemble.IsolationForest",
            "sklearn.covariance.LedoitWolf": "modules/generated/sklearn.covariance.LedoitWolf.html#sklearn.covariance.LedoitWolf",
        },
        "py:function": {
            "sklearn.metrics.roc_auc_score": "modules/generated/sklearn.metrics.roc_auc_score.html#sklearn.metrics.roc_auc_score",
            "sklearn.metrics.average_precision_score": "modules/generated/sklearn.metrics.average_precision_score.html#sklearn.metrics.average_precision_score",
            "sklearn.metrics.roc_curve": "modules/generated/sklearn.metrics.roc_curve.html#sklearn.metrics.roc_curve",
            "sklearn.utils.estimator_checks.parametrize_with_checks": "modules/generated/sklearn.utils.estimator_checks.parametrize_with_checks.html#sklearn.utils.estimator_checks.parametrize_with_checks",
        },
    },
    "pandas": {
        "py:class": {
            "pandas.DataFrame": "reference/api/pandas.DataFrame.html#pandas.DataFrame",
            "pandas.Series": "reference/api/pandas.Series.html#pandas.Series",
            "pandas.Index": "reference/api/pandas.Index.html#pandas.Index",
            "pandas.MultiIndex": "reference/api/pandas.MultiIndex.html#pandas.MultiIndex",
        },
    },
    "matplotlib": {
        "py:class": {
            "matplotlib.figure.Figure": "api/_as_gen/matplotlib.figure.Figure.html#matplotlib.figure.Figure",
            "matplotlib.axes.Axes": "api/_as_gen/matplotlib.axes.Axes.html#matplotlib.axes.Axes",
        },
    },
    "torch": {
        "py:class": {
            "torch.nn.Module": "generated/torch.nn.Module.html#torch.nn.Module",
            "torch.device": "tensor_attributes.html#torch.device",
            "torch.Generator": "generated/torch.Generator.html#torch.Generator",
        },
    },
}


def write(name, entries, folder=Path(__file__).parent):
    lines = []
    for role, objs in entries.items():
        for obj, uri in sorted(objs.items()):
            lines.append(f"{obj} {role} 1 {uri} -")
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {name}\n# Version: \n"
        "# The remainder of this file is compressed using zlib.\n"
    ).encode()
    (folder / f"{name}.inv").write_bytes(header + zlib.compress(("\n".join(lines) + "\n").encode()))


if __name__ == "__main__":
    for project_name, project_entries in OBJECTS.items():
        write(project_name, project_entries)
