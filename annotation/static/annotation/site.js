// Behaviour every page may use, from a static file: the Content-Security-Policy
// (config/security.py) runs no inline script and no on* attribute.
//
//   <button data-confirm="Delete the campaign?">  asks first; "Cancel" stops the click.
"use strict";

document.addEventListener("click", (event) => {
  const target = event.target instanceof Element ? event.target.closest("[data-confirm]") : null;
  if (target !== null && !window.confirm(target.dataset.confirm)) {
    event.preventDefault();
  }
});
