// Drives analytics.js (@segment/analytics-next's UMD build, unmodified) in headless
// Chromium against a relay, from a page served on another loopback port (so every call is
// cross-origin: CORS preflights included).
//
//   node browser.js RELAY_URL WRITE_KEY MODE RUN_ID BIG
//
// MODE: standard (settings from the relay via cdnURL, one request per event),
// batching (the same with deliveryStrategy batching: /v1/b), apihost (settings given
// inline, only apiHost at the relay). Sends identify, track (an order and a journey entry),
// page, group, alias, and a track event whose JSON is exactly BIG bytes as the browser
// sends it (measured on a first probe event through the relay). Waits until the relay has
// acknowledged every event, then prints a JSON summary. Exit status 1 when an event was
// not acknowledged, a request left loopback, or the page logged an error.
//
// Chromium is Debian's (/usr/bin/chromium, or $CHROMIUM), never a downloaded one.
'use strict'

const fs = require('fs')
const http = require('http')
const os = require('os')
const path = require('path')
const { chromium } = require('playwright-core')

const [relay, writeKey, mode, runId, bigArg] = process.argv.slice(2)
const BIG = Number(bigArg)
const UMD = path.join(__dirname, 'node_modules/@segment/analytics-next/dist/umd')

function serveStatic() {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x')
    let file
    if (url.pathname === '/' || url.pathname === '/index.html') {
      file = path.join(__dirname, 'browser.html')
    } else if (url.pathname.startsWith('/analytics-next/bundles/')) {
      file = path.join(UMD, path.basename(url.pathname))
    }
    if (url.pathname === '/favicon.ico') {
      res.writeHead(204)
      res.end()
      return
    }
    if (!file || !fs.existsSync(file)) {
      res.writeHead(404)
      res.end()
      return
    }
    res.writeHead(200, {
      'content-type': file.endsWith('.html') ? 'text/html' : 'application/javascript',
    })
    fs.createReadStream(file).pipe(res)
  })
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () => resolve(server))
  )
}

async function main() {
  const server = await serveStatic()
  const page_origin = `http://127.0.0.1:${server.address().port}`
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sfmc-relay-chromium-'))
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  })
  const problems = []
  const acked = new Map() // order_id or userId+type -> size of the event's JSON
  let ackedEvents = 0
  const page = context.pages()[0] || (await context.newPage())
  page.on('console', (m) => {
    // (Failed loads are reported below with their URL.)
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) {
      problems.push(`console error: ${m.text()}`)
    }
  })
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`))
  page.on('request', (r) => {
    const u = new URL(r.url())
    if (u.hostname !== '127.0.0.1') problems.push(`request left loopback: ${r.url()}`)
  })
  page.on('requestfailed', (r) => problems.push(`request failed: ${r.url()} ${r.failure() && r.failure().errorText}`))
  page.on('response', async (r) => {
    const req = r.request()
    if (r.status() >= 400 && !r.url().startsWith(relay)) problems.push(`${r.status()} from ${r.url()}`)
    if (!r.url().startsWith(relay) || req.method() !== 'POST') return
    const body = req.postData() || ''
    if (r.status() !== 200) {
      problems.push(`${r.status()} from ${r.url()}: ${await r.text().catch(() => '')}`)
      return
    }
    if (r.url().endsWith('/v1/m')) return
    const doc = JSON.parse(body)
    for (const ev of doc.batch || [doc]) {
      ackedEvents += 1
      const id = (ev.properties && ev.properties.order_id) || `${ev.type}:${ev.userId}`
      acked.set(id, Buffer.byteLength(JSON.stringify(ev)))
      if (process.env.DEBUG_EVENTS) console.error(JSON.stringify({ ...ev, properties: { ...ev.properties, note: undefined } }))
    }
  })

  await page.goto(`${page_origin}/?relay=${encodeURIComponent(relay)}&key=${encodeURIComponent(writeKey)}&mode=${mode}`)
  await page.evaluate(() => window.__loaded)

  const waitFor = async (what, test, secs = 30) => {
    const until = Date.now() + secs * 1000
    while (!test()) {
      if (Date.now() > until || problems.length) {
        throw new Error(`timed out waiting for ${what}; acknowledged: ${[...acked.keys()].join(', ')}; problems: ${problems.join(' | ')}`)
      }
      await new Promise((r) => setTimeout(r, 50))
    }
  }
  const big = (id, pad) =>
    page.evaluate(([id, user, pad]) => {
      window.analytics.track('Order Completed', { order_id: id, note: 'x'.repeat(pad) }, { userId: user })
    }, [id, `${runId}-big`, pad])

  await page.evaluate((run) => {
    const a = window.analytics
    a.identify(`${run}-1`, { email: `${run}-1@example.com`, firstName: 'Browser' })
    a.track('Order Completed', { order_id: `${run}-o1`, revenue: 7.5 })
    a.track('Signed Up', { plan: 'free' }, { userId: `${run}-2` })
    a.page('Docs', 'Home')
    a.group(`${run}-g1`, { name: 'Acme' })
    a.alias(`${run}-1`, `${run}-anon`)
  }, runId)
  await waitFor('the first six events', () => ackedEvents >= 6)
  // Probe: same-length order ids, so the size changes only with the padding.
  let pad = BIG - 2000
  await big(`${runId}-bigA`, pad)
  await waitFor('the probe event', () => acked.has(`${runId}-bigA`))
  pad += BIG - acked.get(`${runId}-bigA`)
  await big(`${runId}-bigB`, pad)
  await waitFor('every event acknowledged by the relay', () => ackedEvents >= 8)
  await context.close()
  server.close()
  fs.rmSync(userDataDir, { recursive: true, force: true })
  const size = acked.get(`${runId}-bigB`)
  if (size !== BIG) problems.push(`the big event was ${size} bytes, wanted ${BIG}`)
  if (problems.length) {
    console.error(problems.join('\n'))
    process.exit(1)
  }
  console.log(JSON.stringify({ mode, acknowledged: ackedEvents, big_event_bytes: size }))
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e))
  process.exit(1)
})
