// usage: node compare.mjs SUITE_DIR ID_REGEX [extra-results.json=name ...]
// Shows the published results shipped with the suite (results/*.json) for matching tests.
import path from 'path'
import fs from 'fs'
const suiteDir = path.resolve(process.argv[2])
const re = new RegExp(process.argv[3])
const extra = process.argv.slice(4).map(a => a.split('='))
const index = (await import(path.join(suiteDir, 'results/index.mjs'))).default
const tests = (await import(path.join(suiteDir, 'tests/index.mjs'))).default
tests.push((await import(path.join(suiteDir, 'tests/surrogate-control.mjs'))).default)
const display = await import(path.join(suiteDir, 'lib/display.mjs'))
const impls = index.filter(i => i.type !== 'browser').map(i => [i.name, JSON.parse(fs.readFileSync(path.join(suiteDir, 'results', i.file)))])
for (const [f, n] of extra) impls.push([n, JSON.parse(fs.readFileSync(f))])
console.log(['test', ...impls.map(i => i[0])].join('\t'))
for (const s of tests) for (const t of s.tests) {
  if (!re.test(t.id)) continue
  console.log([t.id, ...impls.map(([, r]) => display.determineTestResult(tests, t.id, r, false)[2])].join('\t'))
}
