"""Data -> HTML renderers, figures and ipywidgets panels. No model code in here."""

from saetools.widgets.dashboard import LatentBrowser, dashboard_html, latent_browser, latent_html
from saetools.widgets.html import OfflineHTML, attention_heads_html, table_html
from saetools.widgets.ioi_panel import IOIPanel, PanelBackend
from saetools.widgets.makelov import (
    EditPlayground,
    OverSplittingExplorer,
    edit_table,
    occlusion_figure,
    oversplitting_figure,
    toy_occlusion_figure,
)
from saetools.widgets.plots import heatmap, scatter_roles
from saetools.widgets.tables import human_column_names, show_human_column_names

__all__ = [
    "EditPlayground",
    "IOIPanel",
    "LatentBrowser",
    "OfflineHTML",
    "OverSplittingExplorer",
    "PanelBackend",
    "attention_heads_html",
    "dashboard_html",
    "edit_table",
    "heatmap",
    "human_column_names",
    "latent_browser",
    "latent_html",
    "occlusion_figure",
    "oversplitting_figure",
    "scatter_roles",
    "show_human_column_names",
    "table_html",
    "toy_occlusion_figure",
]
