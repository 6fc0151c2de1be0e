"""Views, one module per page family. Function-based; an htmx request gets the
page's partial, anything else the whole page, so every link works without JavaScript."""
