"""The customer portal: server-rendered pages over the same model functions as the JSON API.

- ``links``: where a portal link points, and the cookie a link becomes;
- ``security``: the route class every page is declared with (session required, CSRF
  checked on every state-changing request, security headers, HTML errors);
- ``forms``: form fields in, the API's schemas out, errors beside their fields;
- ``pages``: the pages themselves; ``templates/`` (Jinja2) and ``static/`` (vendored CSS).
"""
