import { h } from './dom.js';

export default {
  id: 'node',
  title: 'Node',
  render(ctx, el) {
    el.append(h('p', {}, 'Coming soon.'));
  },
};
