"""The chat and admin page at `/ui`: static files shipped in the package (`static/`), no build step,
no CDN. The page talks to the same server with the user's API key (kept in sessionStorage only)."""
