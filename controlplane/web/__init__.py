"""The control plane's own web pages (server-rendered HTML, served by :mod:`controlplane.api.routes.web`)."""
