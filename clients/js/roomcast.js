// The roomcast JavaScript client lives in the Python package, which serves it to
// browsers (`roomcast serve --demo` at /console/roomcast.js); this module re-exports it
// so that `import { RoomcastClient } from 'clients/js/roomcast.js'` keeps working.
export * from '../../src/roomcast/server/console/roomcast.js';
