// The console's own progressive enhancement (pages work without it): live endpoint states,
// copy buttons, confirmations before destructive forms.
(function () {
  'use strict'
  function refresh(el) {
    fetch(el.dataset.refresh, { credentials: 'same-origin', cache: 'no-store' })
      .then(function (r) { return r.ok ? r.text() : null })
      .then(function (html) { if (html !== null && el.innerHTML.trim() !== html.trim()) el.innerHTML = html })
      .catch(function () {})
  }
  document.addEventListener('DOMContentLoaded', function () {
    var live = document.querySelectorAll('[data-refresh]')
    if (live.length) setInterval(function () { live.forEach(refresh) }, 1500)
    document.querySelectorAll('[data-copy]').forEach(function (button) {
      button.addEventListener('click', function () {
        var text = document.getElementById(button.dataset.copy).textContent
        navigator.clipboard.writeText(text).then(function () { button.textContent = 'Copied' })
      })
    })
    document.querySelectorAll('form[data-confirm]').forEach(function (form) {
      form.addEventListener('submit', function (event) {
        if (!window.confirm(form.dataset.confirm)) event.preventDefault()
      })
    })
  })
})()
