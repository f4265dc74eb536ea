"""The customer portal: server-rendered pages over the same model functions as the JSON API.

- ``links``: where a portal link points, and the cookie a link becomes;
- ``security``: the route class every page is declared with (session required, CSRF
  checked on every state-changing request, security headers, HTML errors), redirects
  and the notices they may ask for;
- ``forms``: form fields in, the API's schemas out, errors beside their fields;
- ``pages``: entering through a link, the endpoints and the endpoint page;
- ``operations``: the endpoint page's Send test event, Recover since… and Rotate;
- ``deliveries``: the delivery log and a delivery with Retry;
- ``chart``: the SVG chart of attempts and failures (pure);
- ``templates/`` (Jinja2) and ``static/`` (the vendored stylesheet; no script).
"""
