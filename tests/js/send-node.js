// Sends every Segment call type with one of Segment's Node libraries, unmodified, to a
// relay: identify, track (an order and a journey entry), page, screen, group, alias, and
// one track event whose JSON is exactly BIG bytes as the library sends it.
//
//   node send-node.js next|classic HOST WRITE_KEY RUN_ID BIG
//
// `next` is @segment/analytics-node (the current library), `classic` is analytics-node 6
// (deprecated, still widely deployed). The exact size is found with a probe: the same
// library first sends the event to a local capture server, and the padding is adjusted
// until the event's JSON in the captured batch is BIG bytes. Exit status 1 on any error
// the library reports. Used by tests/serve_node.rs.
'use strict'

const http = require('http')

const [lib, host, writeKey, runId, bigArg] = process.argv.slice(2)
const BIG = Number(bigArg)

function client(url) {
  const errors = []
  if (lib === 'next') {
    const { Analytics } = require('@segment/analytics-node')
    const a = new Analytics({ writeKey, host: url, flushAt: 20, flushInterval: 100, maxRetries: 2 })
    a.on('error', (e) => errors.push(e))
    const call = (kind, msg) => a[kind](msg)
    return { call, errors, done: () => a.closeAndFlush({ timeout: 15000 }) }
  }
  if (lib === 'classic') {
    const Analytics = require('analytics-node')
    const a = new Analytics(writeKey, {
      host: url,
      flushAt: 20,
      flushInterval: 100,
      retryCount: 2,
      errorHandler: (e) => errors.push(e),
    })
    const pending = []
    const call = (kind, msg) =>
      pending.push(new Promise((resolve) => a[kind](msg, (err) => { if (err) errors.push(err); resolve() })))
    return { call, errors, done: async () => { await a.flush(); await Promise.all(pending) } }
  }
  throw new Error(`unknown library ${lib}`)
}

function bigEvent(pad) {
  return {
    userId: `${runId}-big`,
    event: 'Order Completed',
    properties: { order_id: `${runId}-big`, note: 'x'.repeat(pad) },
  }
}

// The size of the big event's JSON in the batch the library sends, for a given padding.
async function probe(pad) {
  const bodies = []
  const server = http.createServer((req, res) => {
    const chunks = []
    req.on('data', (c) => chunks.push(c))
    req.on('end', () => {
      bodies.push(Buffer.concat(chunks).toString('utf8'))
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end('{"success":true}')
    })
  })
  await new Promise((r) => server.listen(0, '127.0.0.1', r))
  const c = client(`http://127.0.0.1:${server.address().port}`)
  c.call('track', bigEvent(pad))
  await c.done()
  server.close()
  if (c.errors.length) throw new Error(`probe: ${c.errors.map(describe).join('; ')}`)
  for (const b of bodies) {
    for (const ev of JSON.parse(b).batch || []) {
      if (ev.properties && ev.properties.order_id === `${runId}-big`) {
        return Buffer.byteLength(JSON.stringify(ev))
      }
    }
  }
  throw new Error('probe: the big event was not sent')
}

function describe(e) {
  if (!e) return String(e)
  if (e.code && e.reason) return `${e.code}: ${(e.reason && e.reason.message) || e.reason}`
  return e.message || String(e)
}

async function main() {
  let pad = BIG - 1000
  let size = await probe(pad)
  pad += BIG - size
  size = await probe(pad)
  if (size !== BIG) throw new Error(`could not size the event: ${size} bytes, wanted ${BIG}`)

  const c = client(host)
  c.call('identify', { userId: `${runId}-1`, traits: { email: `${runId}-1@example.com`, firstName: 'Node' } })
  c.call('track', { userId: `${runId}-1`, event: 'Order Completed', properties: { order_id: `${runId}-o1`, revenue: 12.5 } })
  c.call('track', { userId: `${runId}-2`, event: 'Signed Up', properties: { plan: 'pro' } })
  c.call('page', { userId: `${runId}-1`, name: 'Home', properties: { url: 'https://example.com/' } })
  c.call('screen', { userId: `${runId}-1`, name: 'Settings' })
  c.call('group', { userId: `${runId}-1`, groupId: `${runId}-g1`, traits: { name: 'Acme' } })
  c.call('alias', { userId: `${runId}-1`, previousId: `${runId}-anon` })
  c.call('track', bigEvent(pad))
  await c.done()
  if (c.errors.length) {
    console.error(`errors: ${c.errors.map(describe).join('; ')}`)
    process.exit(1)
  }
  console.log(JSON.stringify({ lib, big_event_bytes: size }))
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e))
  process.exit(1)
})
