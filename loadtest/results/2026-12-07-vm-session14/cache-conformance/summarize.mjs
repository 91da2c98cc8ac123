// usage: node summarize.mjs SUITE_DIR results-a.json [results-b.json ...]
// Classifies each test the way the suite's results page does (lib/display.mjs).
import path from 'path'
const suiteDir = path.resolve(process.argv[2])
const files = process.argv.slice(3)
const fs = await import('fs')
const tests = (await import(path.join(suiteDir, 'tests/index.mjs'))).default
const surrogate = (await import(path.join(suiteDir, 'tests/surrogate-control.mjs'))).default
tests.push(surrogate)
const display = await import(path.join(suiteDir, 'lib/display.mjs'))
const names = { '✅': 'pass', '⛔️': 'fail', '⚠️': 'optional_fail', Y: 'check_yes', N: 'check_no', '🔹': 'setup_fail', '⁉️': 'harness_fail', '⚪️': 'dependency_fail', '↻': 'retry', '-': 'untested' }
const all = {}
for (const f of files) {
  const res = JSON.parse(fs.readFileSync(f, 'utf8'))
  const counts = {}
  const rows = []
  for (const suite of tests) {
    for (const t of suite.tests) {
      const sym = display.determineTestResult(tests, t.id, res)[2]
      const cls = names[sym] || sym
      counts[cls] = (counts[cls] || 0) + 1
      const r = res[t.id]
      rows.push({ suite: suite.id, id: t.id, kind: t.kind || 'required', cls, msg: Array.isArray(r) ? r[1] : '', name: t.name, spec: t.spec_anchors })
    }
  }
  counts.total = rows.filter(r => r.cls !== 'untested').length
  all[f] = { counts, rows }
}
if (process.env.FORMAT === 'json') {
  console.log(JSON.stringify(all, null, 1))
} else {
  for (const f of files) {
    console.log(`== ${f}`)
    console.log(JSON.stringify(all[f].counts))
    for (const r of all[f].rows) {
      if (['pass', 'check_yes', 'check_no', 'untested'].includes(r.cls)) continue
      console.log(`${r.cls}\t${r.kind}\t${r.suite}\t${r.id}\t${r.msg}`)
    }
  }
}
